"""longseq: efficient long-sequence architectures in JAX/Flax."""
from setuptools import setup

# Lower bounds are the versions this project was tested with.
INSTALL_REQUIRES = [
    "jax>=0.10.2",
    "jaxlib>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "tensorflow-datasets>=4.9.10",
    "array-record>=0.8.6",
    "grain>=0.2.18",
    "ml-collections>=1.1.0",
    "chex>=0.1.92",
    "jaxtyping>=0.3.11",
    "absl-py>=2.5.1",
    "numpy>=2.4",
    "scipy>=1.17",
    "etils>=1.15",
    "pillow>=13.0.0",
    "tensorboard>=2.21.0",
    "tqdm>=4.67",
]

EXTRAS_REQUIRE = {
    "dev": [
        "pytest>=9.0",
        "pytest-xdist>=3.8",
        # Checks the jaxtyping annotations at run time (tests/conftest.py).
        "beartype>=0.23.1",
        "nbformat>=5.10",
        "nbclient>=0.10",
        "ipykernel>=6.29",
        "matplotlib>=3.9",
    ],
    "gpu": ["jax[cuda12]>=0.10.2", "jax-triton>=0.3"],
    "tpu": ["jax[tpu]>=0.10.2"],
}

setup(
    name="longseq",
    version="0.1.0",
    description="Efficient long-sequence architectures (S4, SSMs, efficient attention) in JAX/Flax",
    python_requires=">=3.11",
    packages=["kernels", "layers", "models", "train", "configs", "data"],
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
