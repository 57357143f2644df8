"""cdc-aug: synthetic SVR training data through masked-ILVR diffusion compositing."""

__version__ = "0.1.0"


def __getattr__(name):
    # The pipeline pulls in diffusers/torch; import it only when asked for so that
    # `cdc-aug --help` and the shard tools stay fast.
    if name == "MaskedILVRPipeline":
        from .pipeline_masked_ilvr import MaskedILVRPipeline

        return MaskedILVRPipeline
    raise AttributeError(f"module 'cdc_aug' has no attribute {name!r}")
