"""`make bench`: each stage of aipo-ray timed against the tool a user would otherwise pick.

Every module measures ours and its baseline in the same run and writes
`benchmarks/results/<name>.json` (machine, versions, sizes, figures); `benchmarks.report`
turns those files into docs/performance.md.
"""
