"""The SVD world model: Stable Video Diffusion trained on video clips with the objective it was trained with, so that
the fine-tuned model can serve as the VLM's generative encoder.

`clips.py`: the clip manifest and dataset; `edm.py`: EDM noise levels, v-preconditioning and loss; `svd_objective.py`:
the image-to-video training loss over `SVDComponents`. Nothing is imported here, so importing the package loads no
diffusers or transformers.
"""
