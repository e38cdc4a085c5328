"""The SVD world model: Stable Video Diffusion trained on video clips with the objective it was trained with, so that
the fine-tuned model can serve as the VLM's generative encoder.

`clips.py`: the clip manifest and dataset; `edm.py`: EDM noise levels, v-preconditioning and loss; `svd_objective.py`:
the image-to-video training loss over `SVDComponents`; `batches.py`: the data order and per-slot noise generators;
`parallel.py`: single / DDP / FSDP2 and mixed precision; `checkpoint.py`: resumable DCP checkpoints; `training.py`: the
loop and per-sigma validation; `export.py`: the diffusers directory and sample clips (`scripts/train_world_model.py`).
Nothing is imported here, so importing the package loads no diffusers or transformers.
"""
