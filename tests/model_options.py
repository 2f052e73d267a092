"""Small hyper-parameters of every model, so tests train in seconds (importable: tests/ is on sys.path)."""

SMALL_OPTIONS = {
    "neumf": {"gmf_dim": 8, "mlp_layers": [16, 8]},
    "sasrec": {"hidden_dim": 16, "max_length": 10},
    "mult_dae": {"hidden_dims": [32, 16]},
    "mult_vae": {"hidden_dims": [32, 16], "total_anneal_steps": 100},
    "caser": {"embedding_dim": 8, "max_length": 4, "targets": 2, "vertical_filters": 2, "horizontal_filters": 4},
    "gru4rec": {"embedding_dim": 16, "hidden_dim": 16, "max_length": 10},
    "irgan": {"embedding_dim": 8},
    "content": {"embedding_dim": 8, "hidden_dims": [16], "profile_length": 5},
    "hybrid": {"embedding_dim": 8, "hidden_dims": [16], "profile_length": 5},
}
