"""A local Telegram server speaking MTProto 2.0 over loopback TCP, for tests and demos.

Run it with ``python -m tgstack_testing.telegram serve --state-dir DIR`` (``--help`` lists the
control subcommands). A real, unmodified Telethon client reaches it with two settings only::

    telethon.crypto.rsa.add_key(Path(DIR, "server_public.pem").read_text(), old=False)
    client.session.set_dc(2, "127.0.0.1", port)  # dc id and port from DIR/server.json

and logs in with any phone number and the code ``12345``. Modules: `transport` (framing),
`handshake` (auth-key exchange), `session` (encrypted messages), `world` (state), `api` (RPC
handlers), `server` (connections and pushes), `control` (the control port and its client).
"""
