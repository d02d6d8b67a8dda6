"""Actors past one machine: Ray actors that write into a live run through an ingest on the learner's node.

`link` is the remote actor's view of the run (calls instead of segments), `ingest` the writer on the
learner's machine, `ray_attach` the attach process that starts and watches them on a Ray cluster.
"""
