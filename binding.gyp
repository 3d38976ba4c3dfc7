{
  "variables": {
    # -Werror only where asked (CI and the project's own build scripts set KVM_GMEM_WERROR=1):
    # a newer compiler's new warning must not fail a user's install.
    "werror%": "<!(node -p \"process.env.KVM_GMEM_WERROR === '1' ? 1 : 0\")"
  },
  "targets": [
    {
      "target_name": "kvm_gmem",
      "sources": ["native/addon.cc", "native/vcpu.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_DISABLE_CPP_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "_GNU_SOURCE"
      ],
      "cflags_cc": ["-std=c++17", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
      "cflags_cc!": ["-fno-exceptions"],
      "conditions": [
        ["OS!='linux' or target_arch!='x64'", { "type": "none", "sources": [] }],
        ["werror==1", { "cflags_cc": ["-Werror"] }]
      ]
    }
  ]
}
