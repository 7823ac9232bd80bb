"""The routing feed: how what the store says serves becomes the table every gateway routes by.

``table``: the frozen routing table (no imports; the gateway's request path reads it).
``feed``: built from the store and handed to gateways, in this process or through the store's
routing generation; the rollout controller publishes through the :class:`~.feed.RoutingFeed`
interface and never sees a gateway. ``follower``: a gateway process following the store
(routing generation and inference keys).
"""
