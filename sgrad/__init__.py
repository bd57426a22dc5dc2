"""sgrad: train networks with Decoupled Neural Interfaces (synthetic gradients) in JAX."""
