"""A demo of the web application around Ferry, for the development stack.

    data      the demo's accounts, metrics and skewed values
    seed      fills an empty keyspace (`python -m ferry.demo.seed`)
    traffic   behaves like the web application (`python -m ferry.demo.traffic`)
    receiver  a customer's webhook endpoint (`python -m ferry.demo.receiver`)

None of it runs in production; `supervisord.dev.conf` runs traffic and
receiver beside the workers.
"""
