fn main() {
    std::process::exit(ucw::cli::main());
}
