"""How long the mount polls /dev/fuse for the next request before it sleeps, in a module of its
own so that the CLI's parser and the benchmarks read it without importing the FUSE layer.

pyfuse3.main(poll_us=N) (patches/pyfuse3-3.5.0-zz-poll-before-sleeping.patch) polls for an
adaptive window of at most N µs: it grows while requests follow their replies closely and
halves when they do not, so an idle mount sleeps. Waking an idle vCPU costs tens of µs here,
and a program that issues one request after another pays it per request. The mount stops
polling while its worker threads are busy (vfsd/fs/mount.py), since on two cores the polling
core is the one a flush needs. docs/design-notes.md ("pyfuse3's session loop") has the figures.
"""

DEFAULT_POLL_US = 100
