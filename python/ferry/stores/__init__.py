"""Connections to Redis and Postgres, the schema, and the Redis keyspace walk."""
