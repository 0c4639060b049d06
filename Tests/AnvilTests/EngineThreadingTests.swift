import AnvilBuilder
import AnvilCore
import AnvilEngine
import AnvilIR
import AnvilONNX
import AnvilOps
import AnvilRuntime
import Dispatch
import Foundation
import XCTest

/// One engine shared by four threads, each with its own execution context.
final class EngineThreadingTests: XCTestCase {
    func testFourThreadsMatchOneThreadOverAThousandRuns() throws {
        let model = try ONNXImporter.load(path: TestSupport.fixture("cnn/model.onnx"))
        let file = try EngineBuilder().build(model, name: "cnn").file
        let engine = try Engine(file: file, name: "cnn.anvil")
        let inputs = try (0..<4).map { k in try PassTesting.randomInputs(model.graph, seed: UInt64(100 + k)) }
        let expected = try inputs.map { try ExecutionContext(engine: engine).run($0)[0].value }
        let mismatches = Mismatches()
        DispatchQueue.concurrentPerform(iterations: 4) { thread in
            let context = ExecutionContext(engine: engine)
            for run in 0..<250 {
                let k = (thread + run) % 4
                let value = try? context.run(inputs[k])[0].value
                if value != expected[k] { mismatches.add() }
            }
        }
        XCTAssertEqual(mismatches.count, 0)
    }
}

/// A thread-safe counter for the test.
final class Mismatches: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func add() { lock.lock(); value += 1; lock.unlock() }
    var count: Int { lock.lock(); defer { lock.unlock() }; return value }
}

/// Bad inputs to an engine: clear errors for wrong names, types and shapes; NaN and
/// Inf propagate through the planned kernels without crashing.
final class EngineInputTests: XCTestCase {
    func testBadAndNonFiniteInputs() throws {
        let model = try ONNXImporter.load(path: TestSupport.fixture("cnn/model.onnx"))
        let engine = try Engine(file: try EngineBuilder().build(model, name: "cnn").file, name: "cnn.anvil")
        let context = ExecutionContext(engine: engine)
        let good = try PassTesting.randomInputs(model.graph, seed: 5)
        _ = try context.run(good)
        XCTAssertNotNil(context.lastPlan)
        for (inputs, message) in [(["image": try Tensor(floats: [Float](repeating: 0, count: 3 * 32 * 31), shape: [1, 3, 32, 31])], "dimension 3 must be 32"),
                                  (["image": try Tensor(int64s: [Int64](repeating: 0, count: 3 * 32 * 32), shape: [1, 3, 32, 32])], "element type"),
                                  ([:], "missing"),
                                  (good.merging(["extra": Tensor.scalar(Float(1))]) { a, _ in a }, "no input of this name")] {
            XCTAssertThrowsError(try context.run(inputs)) { error in
                XCTAssertTrue("\(error)".contains(message), "\(error)")
            }
        }
        var values = good["image"]!.floats
        values[0] = .nan
        values[100] = .infinity
        values[200] = -.infinity
        // NaN and infinities reach the outputs as on the reference (NonFiniteTests checks each kernel).
        let special = ["image": try Tensor(floats: values, shape: [1, 3, 32, 32])]
        let output = try context.run(special)[0].value
        XCTAssertEqual(output.shape, [1, 10])
        XCTAssertEqual(output.floats.map(\.isNaN), try ReferenceExecutor(model: model).run(special)[0].value.floats.map(\.isNaN))
        XCTAssertTrue(output.floats.contains { $0.isNaN })
        // The context still works afterwards.
        XCTAssertEqual(try context.run(good)[0].value, try ExecutionContext(engine: engine).run(good)[0].value)
    }

    /// Through layers without a max, non-finite inputs must reach the outputs: conv → add → softmax.
    func testNonFiniteInputsPropagate() throws {
        var rng = SeededGenerator(seed: 3)
        let w = try Tensor(floats: (0..<(4 * 2 * 9)).map { _ in Float.random(in: -1...1, using: &rng) }, shape: [4, 2, 3, 3])
        let g = Graph(name: "nonfinite", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [1, 2, 6, 6]))],
                      outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                      nodes: [Node(name: "conv", opType: "Conv", inputs: ["x", "w"], outputs: ["a"], attributes: ["pads": .ints([1, 1, 1, 1])]),
                              Node(name: "add", opType: "Add", inputs: ["a", "a"], outputs: ["b"]),
                              Node(name: "softmax", opType: "Softmax", inputs: ["b"], outputs: ["y"], attributes: ["axis": .int(-1)])],
                      initializers: [("w", w)])
        let model = Model(graph: g, opsets: [OpsetImport(domain: "", version: 17)])
        let context = try TestSupport.unoptimizedContext(model, name: "nonfinite")
        var values = [Float](repeating: 0.5, count: 72)
        values[14] = .nan   // channel 0, row 2, column 2
        values[36 + 27] = .infinity
        let y = try context.run(["x": try Tensor(floats: values, shape: [1, 2, 6, 6])])[0].value
        XCTAssertNotNil(context.lastPlan)
        // Every output whose 3×3 window saw the NaN is NaN (the softmax spreads it over its row, as ONNX
        // Runtime's does); row 0 saw neither the NaN nor the infinity and stays finite.
        for c in 0..<4 {
            for row in 1...3 { for col in 1...3 { XCTAssertTrue(y.floats[(c * 6 + row) * 6 + col].isNaN, "channel \(c) (\(row), \(col))") } }
            XCTAssertTrue(y.floats[(c * 6) * 6..<((c * 6) * 6 + 6)].allSatisfy(\.isFinite), "channel \(c) row 0")
        }
    }
}

import CAllocationCounter

/// After the first run, a planned inference on bound buffers makes no heap
/// allocation of its own. oneDNN 2.6's primitive execution allocates its argument
/// map on every call (inside libdnnl), so the count allowed is what executing the
/// same primitives alone allocates, measured alongside.
final class EngineAllocationTests: XCTestCase {
    func testPlannedRunsOnBoundBuffersDoNotAllocate() throws {
        try XCTSkipUnless(anvil_allocations_counted() == 1, "a sanitizer's runtime owns malloc here")
        for fixture in ["cnn", "dynamic_batch"] {
            let model = try ONNXImporter.load(path: TestSupport.fixture("\(fixture)/model.onnx"))
            let engine = try Engine(file: try EngineBuilder().build(model, name: fixture).file, name: fixture)
            let context = ExecutionContext(engine: engine)
            let inputs = try PassTesting.randomInputs(model.graph, seed: 9)
            _ = try context.run(inputs)
            let expected = try context.run(inputs)
            let plan = try XCTUnwrap(context.lastPlan, fixture)
            XCTAssertFalse(plan.stepSummary.contains { $0.implementation == "reference" }, "\(fixture): \(plan.stepSummary)")
            let ins = try engine.inputs.map { input -> UnsafeRawBufferPointer in
                try inputs[input.name]!.withHostBytes { raw in
                    let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: raw.count, alignment: 64)
                    copy.copyMemory(from: raw)
                    return UnsafeRawBufferPointer(copy)
                }
            }
            let outs = expected.map { UnsafeMutableRawBufferPointer.allocate(byteCount: $0.value.count * $0.value.dataType.byteSize, alignment: 64) }
            defer { ins.forEach { $0.deallocate() }; outs.forEach { $0.deallocate() } }
            try context.run(inputs: ins, outputs: outs)  // warm
            let runs = 50
            anvil_allocations_start()
            for _ in 0..<runs { try context.run(inputs: ins, outputs: outs) }
            let planned = anvil_allocations_stop()
            anvil_allocations_start()
            for _ in 0..<runs { try context.executePrimitivesOnly() }
            let oneDNN = anvil_allocations_stop()
            print("\(fixture): \(planned / runs) allocations per run, \(oneDNN / runs) of them inside oneDNN's primitive calls")
            // One allocation of Anvil's own per run would add `runs`; a tenth of that absorbs OpenMP's bookkeeping noise.
            XCTAssertLessThanOrEqual(planned, oneDNN + runs / 10, "\(fixture): Anvil's own code allocates during planned runs")
            for (bytes, e) in zip(outs, expected) {
                XCTAssertEqual(try Tensor.fromHostBytes(e.value.dataType, shape: e.value.shape, bytes: bytes.baseAddress!), e.value)
            }
            XCTAssertThrowsError(try context.run(inputs: [], outputs: []))
        }
    }
}

/// A plan keeps the kernels it was made with even after the kernel cache shared by the
/// engine's contexts (at most 8 per layer) dropped them: a soak run that cycled through
/// twelve sequence lengths found a plan reading packed weights freed with its evicted kernel.
final class SharedKernelEvictionTests: XCTestCase {
    func testPlansOutliveTheirKernelsInTheCache() throws {
        let model = try ONNXImporter.load(path: TestSupport.fixture("transformer_dynamic/model.onnx"))
        // The engine as built, in memory: its kernels own their packed weights (a file's are used in place).
        let engine = try EngineBuilder().build(model, name: "dynamic").engine
        func inputs(_ sequence: Int) throws -> [String: Tensor] {
            var rng = SeededGenerator(seed: UInt64(sequence))
            return ["hidden": try Tensor(floats: (0..<(sequence * 64)).map { _ in Float.random(in: -1...1, using: &rng) }, shape: [1, sequence, 64]),
                    "mask": try Tensor(floats: [Float](repeating: 1, count: sequence), shape: [1, sequence])]
        }
        let lengths = Array(3...16)
        let context = ExecutionContext(engine: engine)
        context.planCacheCapacity = lengths.count
        // Twice: the second round runs on plans whose kernels the first round's later lengths pushed out of the cache.
        var planned: [Int: Tensor] = [:]
        for round in 0..<2 {
            for n in lengths {
                _ = try context.run(try inputs(n))
                let y = try context.run(try inputs(n))[0].value
                if round == 0 { planned[n] = y } else { XCTAssertEqual(y, planned[n], "sequence \(n)") }
            }
            // Memory freed with a dropped kernel is soon someone else's: fill the heap's free blocks with NaN.
            let scribbles = (0..<4096).map { i in [Float](repeating: .nan, count: 1024 * (1 + i % 8)) }
            XCTAssertEqual(scribbles.count, 4096)
        }
        XCTAssertGreaterThan(engine.sharedKernelCount, 0)
    }
}

/// `anvil soak`: streams on one engine, every result checked; bad flags refused.
final class SoakCommandTests: XCTestCase {
    func testSoakRunsAndRefusesBadSizes() throws {
        let model = TestSupport.fixture("transformer_dynamic/model.onnx")
        let good = try TestSupport.run(["soak", model, "--streams", "2", "--duration", "1", "--sizes", "sequence=3..9"])
        XCTAssertEqual(good.status, 0, good.stderr)
        XCTAssertTrue(good.stdout.contains("Mismatches: 0, errors: 0") && good.stdout.contains("Steady"), good.stdout)
        for (sizes, message) in [("sequence=9..3", "SYMBOL=LO..HI"), ("nothing=1..2", "which no input's shape has")] {
            let bad = try TestSupport.run(["soak", model, "--duration", "1", "--sizes", sizes])
            XCTAssertEqual(bad.status, 1, sizes)
            XCTAssertTrue(bad.stderr.contains(message), "\(sizes): \(bad.stderr)")
        }
    }
}
