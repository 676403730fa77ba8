"""`study-embed ui`: a small reference web UI over the tenant-safe functions (the `ui` extra).

Server-rendered HTML (Starlette, Jinja2, uvicorn), no JavaScript.  It connects as a role with
study_embed_app and SELECT on the app's tables, never as an owner, and takes the user as a
parameter: it is not an authentication system, so it binds to loopback by default and an app
must put its own authentication in front of such pages.
"""
