"""The edge: our HTTP/1.1 server protocol and upstream reply parsing, on llhttp (httptools).

Nothing in the core imports this package; it hands the core a Request and a Responder and
writes what the core answers.
"""
