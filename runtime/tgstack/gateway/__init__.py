"""The MTProto gateway: sources of channel events, the durable-first pipeline, the outbox."""
