"""The pipelines' gate: model/gate/ with gs:// acted on through Beam's FileSystems (the store the
pipelines own; training and export use tf.io.gfile, model.gate.TensorFlowStore)."""

from __future__ import annotations

from model.gate import Gate


class BeamStore:
    """gs:// through Beam's FileSystems (the pipelines)."""

    @staticmethod
    def _fs():
        from apache_beam.io.filesystems import FileSystems

        return FileSystems

    def exists(self, path):
        return self._fs().exists(path)

    def files(self, folder):
        from beam_pipelines.base.listing import list_entries

        return [entry.path for entry in list_entries(folder)]

    def delete(self, paths):
        if paths:
            self._fs().delete(list(paths))

    def rename(self, sources, targets):
        if sources:
            self._fs().rename(list(sources), list(targets))

    def write(self, path, data):
        with self._fs().create(path, mime_type="application/octet-stream") as f:
            f.write(data)

    def read(self, path):
        with self._fs().open(path) as f:
            return f.read()



def pipeline_gate(roots) -> Gate:
    """A gate over `roots` whose gs:// operations go through Beam's FileSystems."""
    return Gate(roots, store=BeamStore())
