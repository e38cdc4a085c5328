"""The benchmark families, one file each; `prismatic.eval.registry` lists them."""
