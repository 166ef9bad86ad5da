// Shared shape of the CLI scripts: parse, run, and on failure one line on stderr and exit 1 (a
// user with a bad checkpoint needs the file and the problem, not a stack trace).
export function runCli(name: string, main: (argv: string[]) => Promise<void>): void {
  main(process.argv.slice(2)).catch((err: unknown) => {
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`${name}: ${message.replace(/\s*\n\s*/g, ' ')}\n`);
    process.exitCode = 1;
  });
}
