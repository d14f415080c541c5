"""``python -m tapct_app`` (what ``torchrun --nproc_per_node N -m tapct_app pretrain`` runs)."""

from tapct_app.cli import main

raise SystemExit(main())
