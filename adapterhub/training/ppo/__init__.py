"""PPO for RLHF, written for adapterhub: the math (:mod:`.losses`) and the loop (:mod:`.trainer`)."""
