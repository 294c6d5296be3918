"""The online torch model: a GRU user encoder over item embeddings that grow by id,
re-ranked together with transition memories and repeat signals by a learned mixer.

`TorchRecommender` (`recommender.py`) is the facade; `encoder.py` holds the GRU and the
item embeddings, `blocks.py` (with `candidates.py`) the candidates and features of
many users at once, `ranker.py` the mixer, `batch.py` the batch path.
"""

from model.torch_model.recommender import TorchRecommender

__all__ = ["TorchRecommender"]
