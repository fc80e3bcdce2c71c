"""Conversations replayed as a chat front-end would, without an engine: reading and
checking conversation files (:mod:`.source`), rendering them through the model's chat
template (:mod:`.template`), the front-ends' truncation policies (:mod:`.policies`) and
the prefix tripwire that says where and why a new prompt leaves the cached tokens
(:mod:`.tripwire`). The engine side (timing, cache behaviours, quality) is
:mod:`kvcache_exp.measure.replay`.
"""
