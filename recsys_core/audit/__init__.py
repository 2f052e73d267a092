"""Privacy audits of training runs: integrity, formal recomputation and empirical attacks."""
