"""What every TFDS builder of this package shares."""
import sys

from etils import epath
import tensorflow_datasets as tfds


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A ``GeneratorBasedBuilder`` whose code is its own module's file.

  TFDS's default ``code_path`` probes ``importlib_resources``, a backport this
  project does not install; each builder is a plain file.
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(sys.modules[cls.__module__].__file__)
