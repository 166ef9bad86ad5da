// The writer lives with the benchmark, which makes adapters too (tools/ may not import test/).
export * from '../../tools/bench/peft-adapter.js';
