"""The plumbing every phase shares, at the bottom of the package (it imports no other
folder of lana): ``layout`` (the run directory's file names, as data), ``io`` (atomic,
checksummed JSON and safetensors files; the run lock), ``dist`` (torchrun: process group,
ranks, devices, the test kill hook), ``progress`` (progress bars and log lines, one look
for every stage). Nothing is imported here.
"""
