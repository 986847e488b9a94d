fn main() {
    // Behave like other command-line tools when the reader of our output goes away
    // (`ucw info PACK | head`): end quietly instead of panicking on a broken pipe.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::process::exit(ucw::cli::main());
}
