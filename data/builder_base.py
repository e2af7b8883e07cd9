"""What every TFDS builder of this package shares."""
import os
import pathlib
import sys
from typing import Any, Callable, Iterable

from etils import epath
import tensorflow_datasets as tfds

from data import provenance
from data import tasks


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A ``GeneratorBasedBuilder`` whose code is its own module's file.

  TFDS's default ``code_path`` probes ``importlib_resources``, a backport this
  project does not install; each builder is a plain file.
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(sys.modules[cls.__module__].__file__)


class FolderBuilder(Builder, skip_registration=True):
  """A builder that reads one extracted folder of official files: the one
  ``data.manual_dir`` names, or the official archive ``URL`` downloaded and
  extracted. Subclasses set ``URL``, ``SPLITS``, ``find_folder`` (a
  staticmethod: the folder under a path, or ``FileNotFoundError``) and
  ``_generate_examples(folder, split)``."""
  URL: str = ""
  SPLITS: tuple[str, ...] = ()

  def __init__(self, *, source_dir: str | os.PathLike | None = None,
               **kwargs):
    """``source_dir``: the extracted folder; None downloads the archive."""
    self._source_dir = source_dir
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    folder = self._source_dir
    if folder is None:
      folder = self.find_folder(dl_manager.download_and_extract(self.URL))
    return {split: self._generate_examples(folder, split)
            for split in self.SPLITS}


def make_folder_builder(builder_cls: type[FolderBuilder],
                        data_config: Any) -> FolderBuilder:
  """``builder_cls`` for ``config.data``: its folder from ``data.manual_dir``
  (None: it downloads), its files in ``data.data_dir``."""
  manual_dir = tasks.config_field(data_config, "manual_dir")
  return builder_cls(
      source_dir=builder_cls.find_folder(manual_dir) if manual_dir else None,
      data_dir=tasks.config_field(data_config, "data_dir"),
      file_format="array_record")


def prepare_folder(builder_cls: type[FolderBuilder], data_config: Any,
                   read: Callable[[pathlib.Path], Iterable[os.PathLike]]
                   ) -> FolderBuilder:
  """Builds the data set if it is missing and returns its builder; records
  its source (``read(folder)``: the files it reads, or the download URL)."""
  builder = make_folder_builder(builder_cls, data_config)
  manual_dir = tasks.config_field(data_config, "manual_dir")
  if manual_dir:
    source = provenance.manual_source(
        manual_dir, read(builder_cls.find_folder(manual_dir)))
  else:
    source = {"download": builder_cls.URL}
  provenance.prepare(builder, source, builder.download_and_prepare)
  return builder
