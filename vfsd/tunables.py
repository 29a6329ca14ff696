"""The glibc tunables the daemons (mount and gateway) run with, in a module of their own so
that starting the gateway, or a benchmark, does not import the FUSE layer."""

# DESIGN.md "Measured facts": glibc's heap trimming costs ~480 page faults per 1 MiB write,
# and `rep movsb` makes some 64 KiB copies 20x slower on these CPUs. Set before start-up.
# One arena (docs/design-notes.md, "Memory under random writes"): with the high trim
# threshold, each thread's arena kept up to 256 MiB of freed memory of its own, and a mount
# under random 4 KiB writes reserved 700-770 MiB for ~320 in use; shared, 380-450.
GLIBC_TUNABLES = ("glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456:"
                  "glibc.malloc.top_pad=67108864:glibc.cpu.x86_rep_movsb_threshold=2147483647:"
                  "glibc.malloc.arena_max=1")
