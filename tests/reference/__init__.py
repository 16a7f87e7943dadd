"""NeMo's own multi-stream pipeline (`CacheAwareRNNTPipeline`) behind our adapter contract: the
reference the product's vectorised step (services/adapters/vectorised.py) is proven equal to, in
float64, by tests/test_vectorised_step.py. Not served: one decoder path in the product."""
