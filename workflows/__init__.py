"""Operations: scheduled ticks with a ledger (never an input twice, never a partial file), batch predict
on Lightning DDP/SLURM, retraining with promotion, and the deployment files (systemd, cron, ecFlow, SLURM)."""
