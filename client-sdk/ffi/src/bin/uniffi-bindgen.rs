//! Generates the Kotlin and Swift bindings (see `client-sdk/ffi/generate.sh`).

fn main() {
    uniffi::uniffi_bindgen_main()
}
