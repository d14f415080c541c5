"""``python -m tapct_app`` (what ``torchrun --nproc_per_node N -m tapct_app pretrain`` runs)."""

from tapct_app.cli import main

if __name__ == "__main__":  # guarded: spawned reader processes (embed --workers) import it
    raise SystemExit(main())
