"""``tgstack loadtest``: synthetic posts through the real pipeline, measured end to end.

One module, one job:

* ``plan``       what to run (rate, duration, channels, pollers) and the load-test channel ids
* ``posts``      the posts: realistic signals and chatter, sent time as the post's date
* ``sender``     where posts enter the stack; in process into the gateway pipeline (default)
* ``wire``       ``--through telegram``: the local Telegram server, real login and gateway
* ``pacer``      keeps the offered rate
* ``fleet``      the poller processes (or threads) the run starts
* ``observer``   which posts are done, read back from PostgreSQL once a second
* ``accounting`` the zero-loss / zero-duplicate verdict at the end
* ``stats``      percentiles and the per-second timeline (pure)
* ``machine``    the machine, its load average and resource usage while the run lasts
* ``report``     the JSON result and the Markdown summary; ``plot`` the PNG
* ``local``      a whole local stack for ``--local``
* ``runner``     wires it all together; ``command`` is the CLI front end
"""
