"""ISIC Archive API v1 (Girder): the source the mirror was first built for.

The package holds everything the mirror knows about this archive: the client
(:mod:`.client`), the documents phase (:mod:`.documents`), the declared kinds, file roles
and derivations (:mod:`.spec`), the index projection (:mod:`.projection`, :mod:`.models`),
the offline object model (:mod:`.objects`), exports (:mod:`.exports`), superpixels and
overlays, and the sandbox (:mod:`.sandbox`). The engine reaches it only through
:class:`IsicV1Source` and the registry in :mod:`mirror.sources.base`.
"""

# Nothing is imported here: the registry reads :mod:`.spec` alone to match a URL or name a
# kind, and importing the source (:mod:`.source`) costs its client's libraries.
