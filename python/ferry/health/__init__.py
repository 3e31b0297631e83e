"""Health: what supervisord says beside what each worker's stats file says.

settings    `FERRY_HEALTH_*` and where supervisord's control socket is
supervisor  the XML-RPC client over supervisord's unix socket
report      one row per process, and the problems `ferry health` reports
status      rendering of the rows: a terminal table, or JSON
listener    the supervisord event listener that restarts hung workers
http        the optional HTTP endpoint (loopback, bearer token)
"""
