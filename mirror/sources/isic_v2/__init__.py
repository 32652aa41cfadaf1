"""The ISIC Archive through its API v2 (``https://api.isic-archive.com/api/v2/``).

How the archive changes decides how this source syncs (research note ``isic_v2_api.md``
§7): no record carries a modification time, edits happen in place, an image made public
lands in the *past* of the listing order, and a reprocessed file keeps its URL. So a
cheap "new since" cursor probe would miss most changes; every run re-lists the whole scope
(``N/100`` requests) and lets the engine compare documents by hash. A document is the
record with its signed URL queries stripped (:func:`client.stable_document`), so a
private record's daily signature renewal is not a change.

Collections are stored with their membership (``isic_ids``, from one search listing per
collection: the archive has no other way to say which images a collection holds, and
adding an image to a collection never touches the image record). A change of an image's
file identity (stable URL, recorded size or pixel size) retires the mirrored file, so the
next file plan fetches the new bytes as a new version under the same role.

Authentication is a bearer token (``ISIC_TOKEN``, see :mod:`.client`); the archive
ignores a bad token on public routes, so the token is checked with ``users/me/`` before
anything is listed.
"""

# Nothing is imported here: the registry reads :mod:`.spec` alone to match a URL or name a
# kind, and importing the source (:mod:`.source`) costs its client's libraries.
