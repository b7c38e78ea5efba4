"""Packaging for edgecnn."""

import setuptools

setuptools.setup(
    name="edgecnn",
    version="0.1.0",
    description=("Cloud-edge collaboration for cognitive services: CloudCNN "
                 "teaches EdgeCNN (Ding et al.)"),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["edgecnn", "edgecnn.*",
                                               "experiments"]),
    package_data={"edgecnn": ["paper_values.csv"]},
    python_requires=">=3.11",
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3",
        "tensorflow-datasets",
        # tfds 4.9.x imports importlib_resources to download a dataset but
        # declares it only for Python < 3.9 (tensorflow/datasets#11212):
        # without it every download fails with ModuleNotFoundError.
        "importlib_resources",
        "numpy",
        "pandas",
        "absl-py",
        "fastapi",
        # uvloop and httptools: the event loop and HTTP parser that keep
        # per-request overhead low under load (docs/reliability.md).
        "uvicorn[standard]",
        "orjson",
        "httpx",
        "pillow",
    ],
    extras_require={
        "figures": ["matplotlib", "nbformat", "nbclient", "ipykernel"],
        "test": ["pytest", "pytest-xdist", "matplotlib", "nbformat",
                 "nbclient", "ipykernel", "schemathesis"],
    },
)
