"""The loop of a ranker in production, offline side: the served-impression log as training data
(`logs`), simulated users with known tastes to drive a service (`simulate`), and the experiment report
(`experiment`). Imports `unirank.core`, Redis and the synthetic generator; never the service or torch."""
