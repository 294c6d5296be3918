"""streamrec application: Faust app, agents, topics, wire schemas, settings, CLI."""
