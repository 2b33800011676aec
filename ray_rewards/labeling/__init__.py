"""A web page where people label fragment pairs: ``ray-rewards label SOURCE``.

- ``service``: leases, validation and writing of answers (no HTTP), for a queue
  folder (:class:`~ray_rewards.preferences.AsyncGatherer`) or a Parquet set of pairs;
- ``files``: the queue folder read as it grows, the one-server lock, the pairs source;
- ``checks``: what a request may say, and the 4xx error that refuses it;
- ``server``: the HTTP server (standard library) and its token;
- ``page``: the page itself (HTML and JavaScript);
- ``apng``: frames to looping animated PNG;
- ``command``: the click command.
"""

from ray_rewards.labeling.apng import encode_apng
from ray_rewards.labeling.server import LabelServer
from ray_rewards.labeling.service import LabelingError, LabelingService

__all__ = ["LabelServer", "LabelingError", "LabelingService", "encode_apng"]
