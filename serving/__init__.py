"""Vector serving: FAISS index, Redis vector store, the top-K query. No Faust here."""
