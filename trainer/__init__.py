"""The learning half of the loop: reward-model training, DPO (TRL) and PPO with a KL penalty, evaluation
gates, and packaging a new policy version for the registry."""
