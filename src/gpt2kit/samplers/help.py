"""One line per sampler setting, for `--help`, `gpt2kit info` and the playground. Torch-free, as options.py is."""

HELP = {
    "min_p": "min-p: keep the tokens at least min_p times as likely as the likeliest one; 0 = off",
    "typical_p": "locally typical sampling (Meister et al.): keep the tokens whose surprise is closest to the "
    "expected surprise, up to this much probability; 1 = off",
    "epsilon_cutoff": "epsilon-sampling (Hewitt et al. 2022): drop the tokens less likely than this; 0 = off",
    "eta_cutoff": "eta-sampling (Hewitt et al. 2022): drop the tokens less likely than this epsilon, lowered "
    "where the model is unsure (high entropy); 0 = off",
    "top_n_sigma": "top-n-sigma: keep the logits within n standard deviations of the largest; 0 = off",
    "mirostat": "2 = mirostat v2: truncate to hold the text's surprise near mirostat_tau, in place of top-k, "
    "top-p and the other truncations; 0 = off",
    "mirostat_tau": "mirostat's target surprise, in bits per token (higher: more varied text)",
    "mirostat_eta": "mirostat's learning rate: how fast it follows the surprise it observes",
    "dry_multiplier": "DRY ('don't repeat yourself'): penalise the token that would extend a repeat of earlier "
    "text, by this times dry_base ** (repeat length - dry_allowed_length); 0 = off",
    "dry_base": "DRY: how fast the penalty grows with each further repeated token",
    "dry_allowed_length": "DRY: repeats up to this many tokens go unpenalised",
    "dry_penalty_last_n": "DRY: how many of the latest tokens it searches for repeats; -1 = all of them",
    "dry_sequence_breakers": "DRY: texts a repeat never runs across (new lines, colons, quotes, asterisks)",
    "xtc_threshold": "XTC (exclude top choices): tokens at least this likely are the top choices; above 0.5 = off",
    "xtc_probability": "XTC: the chance, each token, of removing every top choice but the least likely "
    "(when there are two or more); 0 = off",
    "penalty_alpha": "contrastive search (Su et al. 2022): pick among the top_k tokens by probability minus "
    "this times the likeness to the text so far; 0 = off",
}
