"""resnet-jax: deep residual networks (He et al. 2015, 2016) in JAX/Flax, trained data-parallel."""
