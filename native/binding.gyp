{
  "targets": [
    {
      "target_name": "dogfs_codec",
      "sources": ["dogfs_codec.c", "simd_kernel.c"],
      "cflags": ["-O2", "-fvisibility=hidden", "-Wall", "-Wextra"],
      "libraries": ["-ldl"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
