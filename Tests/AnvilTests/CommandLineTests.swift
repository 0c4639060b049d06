import Foundation
import AnvilCore
import AnvilEngine
import AnvilIR
import AnvilONNX
import AnvilOps
import XCTest

/// End-to-end tests of the `anvil` command line: whole invocations, exit status and output.
final class CommandLineTests: XCTestCase {
    func testValidatePassesOnEveryFixture() throws {
        for name in ["cnn", "transformer", "transformer_dynamic", "dynamic_batch", "if_branch", "quirks/negative_dims", "quirks/stale_output_shape"] {
            let r = try TestSupport.run(["validate", TestSupport.fixture("\(name)/model.onnx"), "--reference", TestSupport.fixture(name)])
            XCTAssertEqual(r.status, 0, "\(name): \(r.stdout)\(r.stderr)")
            XCTAssertTrue(r.stdout.contains("PASSED"), r.stdout)
            XCTAssertFalse(r.stdout.contains("FAIL"), r.stdout)
        }
    }

    /// What real exporters write (fixtures/quirks, made by tools/make-quirk-fixtures):
    /// paddle2onnx's dim_value -1 is a dynamic dimension, each its own; a declared output
    /// shape the computation contradicts is a warning naming both, and the computed one wins.
    func testExporterQuirksImportAndRun() throws {
        let paddle = try ONNXImporter.load(path: TestSupport.fixture("quirks/negative_dims/model.onnx"))
        let dims = try XCTUnwrap(paddle.graph.inputs[0].type.dims)
        XCTAssertEqual(dims.count, 4)
        XCTAssertEqual(dims[1], .known(3))
        XCTAssertEqual(Set([dims[0], dims[2], dims[3]].map(\.description)).count, 3, "three independent dynamic dimensions: \(dims)")
        // Batch 1 and 2, two image sizes, one engine without shape arguments; the per-channel
        // Mul / Add fold into the convolution even with symbolic dimensions.
        let folder = try TestSupport.temporaryFolder()
        let built = try TestSupport.run(["build", TestSupport.fixture("quirks/negative_dims/model.onnx"), "-o", folder + "/p.anvil"])
        XCTAssertEqual(built.status, 0, built.stderr)
        XCTAssertTrue(built.stdout.contains("2 layers (1 fused"), built.stdout)
        let validate = try TestSupport.run(["validate", folder + "/p.anvil", "--reference", TestSupport.fixture("quirks/negative_dims")])
        XCTAssertEqual(validate.status, 0, validate.stdout + validate.stderr)
        let stale = try TestSupport.run(["build", TestSupport.fixture("quirks/stale_output_shape/model.onnx"), "-o", folder + "/s.anvil"])
        XCTAssertEqual(stale.status, 0, stale.stderr)
        XCTAssertTrue(stale.stderr.contains("warning: node 'to_time_major' (Transpose): output 'y' is declared float[1,seqlen] but computes float[seq,1,10]"), stale.stderr)
        let run = try TestSupport.run(["validate", folder + "/s.anvil", "--reference", TestSupport.fixture("quirks/stale_output_shape")])
        XCTAssertEqual(run.status, 0, run.stdout + run.stderr)
        // An element type the computation contradicts stays an error.
        let m = try ONNXImporter.load(path: TestSupport.fixture("quirks/stale_output_shape/model.onnx"))
        m.graph.outputs[0].type = TensorType(.int64, m.graph.outputs[0].type.dims)
        var inference = ShapeInference(model: m)
        XCTAssertThrowsError(try inference.run()) { XCTAssertTrue("\($0)".contains("is inferred as float"), "\($0)") }
    }

    /// A transformer exported with dynamic batch and sequence axes (shapes computed by
    /// Shape → Gather → Concat at run time) builds, without shape arguments, into the same
    /// fused layers as with fixed shapes, with no layer on a slow path, and runs at both
    /// of its reference shapes.
    func testDynamicTransformerFusesLikeAStaticOne() throws {
        let model = TestSupport.fixture("transformer_dynamic/model.onnx"), folder = try TestSupport.temporaryFolder()
        let dynamic = try TestSupport.run(["build", model, "-o", folder + "/d.anvil"])
        let fixed = try TestSupport.run(["build", model, "-o", folder + "/s.anvil", "--shapes", "hidden:2x16x64,mask:2x16"])
        XCTAssertEqual(dynamic.status, 0, dynamic.stderr)
        XCTAssertEqual(fixed.status, 0, fixed.stderr)
        func summary(_ out: String) -> String? { out.range(of: #"\d+ layers \(\d+ fused, \d+ on fast kernels, \d+ on slow paths\)"#, options: .regularExpression).map { String(out[$0]) } }
        XCTAssertEqual(summary(dynamic.stdout), "19 layers (5 fused, 19 on fast kernels, 0 on slow paths)", dynamic.stdout)
        XCTAssertEqual(summary(dynamic.stdout), summary(fixed.stdout), fixed.stdout)
        let inspect = try TestSupport.run(["inspect", folder + "/d.anvil"])
        XCTAssertTrue(inspect.stdout.contains("ai.anvil.Attention [oneDNN attention"), inspect.stdout)
        let validate = try TestSupport.run(["validate", folder + "/d.anvil", "--reference", TestSupport.fixture("transformer_dynamic")])
        XCTAssertEqual(validate.status, 0, validate.stdout)
        // anvil optimize leaves the same graph without shape arguments.
        let optimized = try TestSupport.run(["optimize", model, "-o", folder + "/o.onnx"])
        XCTAssertEqual(optimized.status, 0, optimized.stderr)
        XCTAssertFalse(try ONNXImporter.load(path: folder + "/o.onnx").graph.nodes.contains { $0.opType == "Shape" }, "shape computations left")
        // With --shapes the same graph, at fixed shapes; a wrong name or rank is refused.
        let fixedOptimize = try TestSupport.run(["optimize", model, "-o", folder + "/f.onnx", "--shapes", "hidden:2x16x64,mask:2x16"])
        XCTAssertEqual(fixedOptimize.status, 0, fixedOptimize.stderr)
        XCTAssertEqual(try ONNXImporter.load(path: folder + "/f.onnx").graph.nodes.count, try ONNXImporter.load(path: folder + "/o.onnx").graph.nodes.count)
        let wrong = try TestSupport.run(["optimize", model, "-o", folder + "/w.onnx", "--shapes", "hidden:2x16"])
        XCTAssertEqual(wrong.status, 1)
        XCTAssertTrue(wrong.stderr.contains("input 'hidden' has rank 3"), wrong.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder + "/w.onnx"))
    }

    func testValidateFailsWhenOutputsDisagree() throws {
        // Tolerances of zero against ORT's float outputs: some elements differ in the last bits.
        let r = try TestSupport.run(["validate", TestSupport.fixture("transformer/model.onnx"), "--reference", TestSupport.fixture("transformer"),
                                     "--atol", "0", "--rtol", "0"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stdout.contains("FAIL"), r.stdout)
        XCTAssertTrue(r.stdout.contains("max abs error"), r.stdout)
    }

    func testInspectListsUnsupportedOps() throws {
        let r = try TestSupport.run(["inspect", TestSupport.fixture("invalid/unknown_op.onnx")])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("fancy1: FancyOp"), r.stdout)
        let json = try TestSupport.run(["inspect", TestSupport.fixture("cnn/model.onnx"), "--format", "json"])
        XCTAssertEqual(json.status, 0)
        let object = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        XCTAssertEqual((object?["inputs"] as? [[String: Any]])?.first?["name"] as? String, "image")
        XCTAssertEqual(object?["opsets"] as? [String: Int], ["ai.onnx": 17])
        XCTAssertGreaterThan(object?["parameterCount"] as? Int ?? 0, 1000)
    }

    func testRunWritesOutputsInBothFormats() throws {
        let out = try TestSupport.temporaryFolder()
        for format in ["pb", "npy"] {
            let r = try TestSupport.run(["run", TestSupport.fixture("invalid/valid_add.onnx"), "--input", "x=\(TestSupport.fixture("invalid/x_ok.npy"))",
                                         "--output-dir", out, "--output-format", format])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(out)/y.\(format)"))
        }
    }

    /// Each bad input gets a clear error naming what is wrong, exit status 1, and no output files.
    /// `run` and `validate` build an ONNX model into an engine in memory (optimizer and
    /// oneDNN), and say so; `--reference-executor` runs the model as it is.
    func testRunAndValidateUseAnEngineUnlessToldOtherwise() throws {
        let model = TestSupport.fixture("cnn/model.onnx"), input = "image=" + TestSupport.fixture("cnn/test_data_set_0/input_0.pb")
        let folder = try TestSupport.temporaryFolder()
        let engine = try TestSupport.run(["run", model, "--input", input, "--output-dir", folder + "/engine", "--output-format", "npy"])
        XCTAssertEqual(engine.status, 0, engine.stderr)
        XCTAssertTrue(engine.stdout.contains("Ran on the engine built in memory from \(model) (7 layers, 0 on slow paths)"), engine.stdout)
        let reference = try TestSupport.run(["run", model, "--input", input, "--output-dir", folder + "/reference", "--output-format", "npy", "--reference-executor"])
        XCTAssertEqual(reference.status, 0, reference.stderr)
        XCTAssertTrue(reference.stdout.contains("Ran on the reference executor on \(model)"), reference.stdout)
        let a = try TensorFiles.read(folder + "/engine/logits.npy").tensor, b = try TensorFiles.read(folder + "/reference/logits.npy").tensor
        XCTAssertTrue(Comparison.compare(actual: a, expected: b, atol: 1e-5, rtol: 1e-3).passed)
        let validate = try TestSupport.run(["validate", model, "--reference", TestSupport.fixture("cnn"), "--against", model])
        XCTAssertEqual(validate.status, 0, validate.stdout)
        XCTAssertTrue(validate.stdout.contains("compared with the reference executor on \(model)"), validate.stdout)
        _ = try TestSupport.run(["build", model, "-o", folder + "/e.anvil"])
        let refused = try TestSupport.run(["run", folder + "/e.anvil", "--input", input, "--output-dir", folder + "/x", "--reference-executor"])
        XCTAssertEqual(refused.status, 1)
        XCTAssertTrue(refused.stderr.contains("is an engine; the reference executor runs ONNX models"), refused.stderr)
    }

    func testBadInputsFailCleanly() throws {
        let model = TestSupport.fixture("invalid/valid_add.onnx")
        let cases: [(args: [String], mentions: [String])] = [
            (["run", TestSupport.fixture("invalid/not_onnx.onnx"), "--input", "x=\(TestSupport.fixture("invalid/x_ok.npy"))"], ["not_onnx.onnx", "not a valid ONNX"]),
            (["run", TestSupport.fixture("invalid/unknown_op.onnx"), "--input", "x=\(TestSupport.fixture("invalid/x_ok.npy"))"], ["fancy1 (FancyOp)"]),
            (["run", TestSupport.fixture("invalid/shape_mismatch.onnx"), "--input", "x=\(TestSupport.fixture("invalid/x_ok.npy"))"], ["node 'add1'", "cannot be broadcast"]),
            (["run", TestSupport.fixture("invalid/type_mismatch.onnx"), "--input", "x=\(TestSupport.fixture("invalid/x_ok.npy"))"], ["node 'add1'", "same element type, got float and int64"]),
            (["run", model, "--input", "x=\(TestSupport.fixture("invalid/x_wrong_shape.npy"))"], ["tensor 'x'", "dimension 0 must be 2", "x_wrong_shape.npy"]),
            (["run", model, "--input", "x=\(TestSupport.fixture("invalid/x_wrong_type.npy"))"], ["tensor 'x'", "expected element type float, got int64"]),
            (["run", model, "--input", "x=\(TestSupport.fixture("invalid/x_truncated.npy"))"], ["x_truncated.npy", "needs 24 bytes"]),
            (["run", model], ["tensor 'x'", "missing"]),
            (["run", model, "--input", "x=/nonexistent/file.npy"], ["/nonexistent/file.npy", "no such file"]),
            (["run", model, "--input", "nonsense"], ["name=FILE"]),
            (["run", model, "--input", "z=\(TestSupport.fixture("invalid/x_ok.npy"))"], ["'z'", "no input of this name"]),
            (["run", "/nonexistent/model.onnx"], ["/nonexistent/model.onnx", "no such file"]),
            (["run", TestSupport.fixture("invalid/absurd_dims.onnx")], ["absurd_dims.onnx", "dims"]),
        ]
        for c in cases {
            let out = try TestSupport.temporaryFolder()
            let r = try TestSupport.run(c.args + ["--output-dir", "\(out)/results"])
            XCTAssertEqual(r.status, 1, "\(c.args): \(r.stdout) \(r.stderr)")
            XCTAssertTrue(r.stderr.hasPrefix("error: "), "\(c.args): \(r.stderr)")
            for m in c.mentions { XCTAssertTrue(r.stderr.contains(m), "\(c.args) should mention '\(m)': \(r.stderr)") }
            let left = (try? FileManager.default.contentsOfDirectory(atPath: "\(out)/results")) ?? []
            XCTAssertEqual(left, [], "\(c.args) left files behind: \(left)")
        }
    }

    /// Issue 11's memory policy: a size the model asks for is checked before anything is
    /// allocated, and every command fails naming the node, the size and the limit (these
    /// aborted in the allocator or corrupted the heap), leaving nothing behind.
    func testSizesAboveTheMemoryLimitAreRefusedWithTheNode() throws {
        for (fixture, node) in [("huge_constant_of_shape", "fill"), ("enormous_constant_of_shape", "fill"), ("huge_expand", "expand"),
                                ("huge_tile", "tile"), ("huge_range", "range")] {
            let model = TestSupport.fixture("invalid/\(fixture).onnx")
            let folder = try TestSupport.temporaryFolder()
            // inspect reports the failed shape inference among its findings.
            let inspect = try TestSupport.run(["inspect", model])
            XCTAssertTrue(inspect.stdout.contains("Shape inference failed: node '\(node)'") && inspect.stdout.contains("memory limit"), inspect.stdout)
            for args in [["optimize", model, "-o", folder + "/o.onnx"], ["build", model, "-o", folder + "/e.anvil"],
                         ["run", model, "--output-dir", folder + "/out"] + (["huge_expand", "huge_tile"].contains(fixture)
                             ? ["--input", "x=\(TestSupport.fixture("invalid/x_1x1.npy"))"] : [])] {
                let r = try TestSupport.run(args)
                XCTAssertEqual(r.status, 1, "\(args): \(r.stdout) \(r.stderr.prefix(400))")
                XCTAssertTrue(r.stderr.hasPrefix("error: ") && r.stderr.contains("'\(node)'") && r.stderr.contains("memory limit"),
                              "\(args): \(r.stderr.prefix(400))")
            }
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder), [], "\(fixture) left files behind")
        }
        // The limit is settable by flag and by environment; a malformed one is refused.
        let model = TestSupport.fixture("cnn/model.onnx"), folder = try TestSupport.temporaryFolder()
        let small = try TestSupport.run(["build", model, "-o", folder + "/e.anvil", "--memoryLimit", "4K"])
        XCTAssertEqual(small.status, 1)
        XCTAssertTrue(small.stderr.contains("memory limit of 4096 bytes"), small.stderr)
        let environment = try TestSupport.run(["optimize", model, "-o", folder + "/o.onnx"], environment: [MemoryPolicy.environmentVariable: "4K"])
        XCTAssertEqual(environment.status, 1)
        XCTAssertTrue(environment.stderr.contains("memory limit of 4096 bytes"), environment.stderr)
        let bad = try TestSupport.run(["inspect", model, "--memoryLimit", "lots"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("'lots' is not a positive size"), bad.stderr)
        XCTAssertEqual(try TestSupport.run(["build", model, "-o", folder + "/e.anvil", "--memoryLimit", "1G"]).status, 0)
    }

    /// Reads are bounded: a device is refused by name (stat says 0 bytes for /dev/zero,
    /// and reading it ran until the machine's memory was gone); --threads is capped.
    func testDevicesAndAbsurdThreadCountsAreRefused() throws {
        let engine = try TestSupport.temporaryFolder() + "/e.anvil"
        XCTAssertEqual(try TestSupport.run(["build", TestSupport.fixture("invalid/valid_add.onnx"), "-o", engine]).status, 0)
        for args in [["run", engine, "--input", "x=/dev/zero", "--output-dir", try TestSupport.temporaryFolder()], ["inspect", "/dev/zero"],
                     ["run", "/dev/zero", "--output-dir", try TestSupport.temporaryFolder()], ["bench", "/dev/zero"]] {
            let r = try TestSupport.run(args)
            XCTAssertEqual(r.status, 1, "\(args)")
            XCTAssertTrue(r.stderr.contains("/dev/zero") && (r.stderr.contains("is a device") || r.stderr.contains("not a regular file")), "\(args): \(r.stderr)")
        }
        for args in [["bench", engine, "--threads", "65536"], ["exec", "--loadEngine=\(engine)", "--threads=100000"]] {
            let r = try TestSupport.run(args)
            XCTAssertEqual(r.status, 1, "\(args)")
            XCTAssertTrue(r.stderr.contains("--threads") && r.stderr.contains("cores"), "\(args): \(r.stderr)")
        }
    }

    /// Issue 11's unclear messages: each now says what is wrong.
    func testMistakesGetMessagesThatSayWhatIsWrong() throws {
        let model = TestSupport.fixture("invalid/valid_add.onnx"), folder = try TestSupport.temporaryFolder()
        let engine = folder + "/e.anvil"
        XCTAssertEqual(try TestSupport.run(["build", model, "-o", engine]).status, 0)
        let help = try TestSupport.run(["exec", "--help"])
        XCTAssertEqual(help.status, 0, help.stderr)
        XCTAssertTrue(help.stdout.contains("trtexec"), help.stdout)
        let version = try TestSupport.run(["--version"])
        XCTAssertEqual(version.status, 0)
        XCTAssertTrue(version.stdout.hasPrefix("anvil "), version.stdout)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: engine))
        try bytes.prefix(40).write(to: URL(fileURLWithPath: folder + "/short.anvil"))
        let input = "x=\(TestSupport.fixture("invalid/x_ok.npy"))"
        let cases: [(args: [String], mentions: String)] = [
            (["build", engine, "-o", folder + "/again.anvil"], "this is an Anvil engine, not an ONNX model"),
            (["optimize", engine, "-o", folder + "/o.onnx"], "this is an Anvil engine, not an ONNX model"),
            (["inspect", folder + "/short.anvil"], "truncated: 40 bytes"),
            (["validate", engine, "--reference", TestSupport.fixture("cnn"), "--atol", "-1"], "--atol and --rtol must be finite and non-negative"),
            (["run", engine, "--input", input, "--output-dir", model], "exists and is not a folder"),
        ]
        for c in cases {
            let r = try TestSupport.run(c.args)
            XCTAssertEqual(r.status, 1, "\(c.args)")
            XCTAssertTrue(r.stderr.contains(c.mentions), "\(c.args): \(r.stderr)")
        }
    }

    /// Issue 11's file safety: no output may replace an input or another output, a device
    /// is written through and never replaced, and outputs whose names collide all get files.
    func testOutputsNeverReplaceInputsDevicesOrEachOther() throws {
        let folder = try TestSupport.temporaryFolder()
        let model = folder + "/m.onnx", engine = folder + "/e.anvil"
        try FileManager.default.copyItem(atPath: TestSupport.fixture("invalid/valid_add.onnx"), toPath: model)
        let original = try Data(contentsOf: URL(fileURLWithPath: model))
        XCTAssertEqual(try TestSupport.run(["build", model, "-o", engine]).status, 0)
        let engineBytes = try Data(contentsOf: URL(fileURLWithPath: engine))
        let cases: [(args: [String], mentions: String)] = [
            (["build", model, "-o", folder + "/f.anvil", "--exportLayerInfo", model], "--exportLayerInfo \(model) is the same file as the model"),
            (["build", model, "-o", folder + "/f.anvil", "--timingCacheFile", folder + "/f.anvil"], "is the same file as -o"),
            (["build", model, "-o", folder + "/./m.onnx"], "is the same file as the model"),
            (["bench", engine, "--exportTimes", engine], "--exportTimes \(engine) is the same file as the model"),
            (["bench", engine, "--exportTimes", folder + "/p.json", "--exportProfile", folder + "/p.json"], "give each output its own file"),
            (["exec", "--loadEngine=\(engine)", "--exportProfile=\(engine)"], "is the same file as --loadEngine"),
            (["build", model, "-o", folder], "is a folder"),
        ]
        for c in cases {
            let r = try TestSupport.run(c.args)
            XCTAssertEqual(r.status, 1, "\(c.args)")
            XCTAssertTrue(r.stderr.contains(c.mentions), "\(c.args): \(r.stderr)")
        }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: model)), original, "the model was overwritten")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: engine)), engineBytes, "the engine was overwritten")
        // Nothing hidden left behind (temporary files are .NAME.anvil-XXXXXX).
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder).sorted(), ["e.anvil", "m.onnx"])
        // A device is written through, not replaced by a regular file, and may take several outputs.
        XCTAssertEqual(try TestSupport.run(["build", model, "-o", "/dev/null", "--exportLayerInfo", "/dev/null"]).status, 0)
        var info = stat()
        XCTAssertEqual(stat("/dev/null", &info), 0)
        XCTAssertEqual(info.st_mode & S_IFMT, S_IFCHR, "/dev/null is still a device")
        // /dev/stdout redirected to a file is written through (it links to /proc/self/fd/1).
        let redirected = folder + "/stdout.anvil"
        FileManager.default.createFile(atPath: redirected, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: TestSupport.anvil)
        process.arguments = ["build", model, "-o", "/dev/stdout"]
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: redirected))
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: redirected)).prefix(8), Data(EngineFile.magic), "the engine went to the redirected stdout")
        try FileManager.default.removeItem(atPath: redirected)
        // Outputs named "a/b" and "a_b" both get files.
        let out = folder + "/out"
        let r = try TestSupport.run(["run", TestSupport.fixture("invalid/colliding_outputs.onnx"), "--input", "x=\(TestSupport.fixture("invalid/x_ok.npy"))",
                                     "--output-dir", out, "--output-format", "npy"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out).sorted(), ["a_b.npy", "a_b_2.npy"])
        XCTAssertTrue(r.stdout.contains("a/b: float[2, 3] -> \(out)/a_b.npy") && r.stdout.contains("a_b: float[2, 3] -> \(out)/a_b_2.npy"), r.stdout)
    }

    /// A graph that can only fail at run time is refused at build time, the node named.
    func testGraphsThatCannotRunAreRefusedAtBuildTime() throws {
        let folder = try TestSupport.temporaryFolder()
        for (fixture, mentions) in [("conv_channel_mismatch", "node 'conv1' (Conv): the input has 3 channels, the weights [4, 5, 3, 3] with group 1 take 5"),
                                    ("impossible_reshape", "node 'reshape1' (Reshape): cannot reshape [1, 3, 8, 8] (192 elements) to [5, 7] (35 elements)"),
                                    ("relu_two_inputs", "node 'relu1' (Relu): has 2 inputs; Relu takes 1")] {
            let r = try TestSupport.run(["build", TestSupport.fixture("invalid/\(fixture).onnx"), "-o", folder + "/e.anvil"])
            XCTAssertEqual(r.status, 1, fixture)
            XCTAssertTrue(r.stderr.contains(mentions), "\(fixture): \(r.stderr)")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder), [])
    }

    func testValidateRefusesReferenceFoldersWithoutData() throws {
        let empty = try TestSupport.temporaryFolder()
        let r = try TestSupport.run(["validate", TestSupport.fixture("cnn/model.onnx"), "--reference", empty])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("test_data_set_N"), r.stderr)
    }
}

/// `anvil optimize` end to end: the written model passes onnx.checker, runs in
/// ONNX Runtime with the reference outputs, and reads back into Anvil with its
/// fused ops intact.
final class OptimizeCommandTests: XCTestCase {
    func testOptimizedModelsRunInONNXRuntimeAndAnvil() throws {
        for name in ["cnn", "transformer", "dynamic_batch", "if_branch"] {
            let out = try TestSupport.temporaryFolder() + "/optimized.onnx"
            let r = try TestSupport.run(["optimize", TestSupport.fixture("\(name)/model.onnx"), "-o", out])
            XCTAssertEqual(r.status, 0, "\(name): \(r.stderr)")
            XCTAssertTrue(r.stdout.contains("nodes"), r.stdout)
            let check = Process()
            check.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            check.arguments = ["python3", "\(TestSupport.root)/tools/check-onnx-export", out, TestSupport.fixture(name)]
            try check.run()
            check.waitUntilExit()
            XCTAssertEqual(check.terminationStatus, 0, "\(name): onnx.checker or ONNX Runtime refused the optimized model")
            let validate = try TestSupport.run(["validate", out, "--reference", TestSupport.fixture(name)])
            XCTAssertEqual(validate.status, 0, "\(name): \(validate.stdout)")
        }
        let out = try TestSupport.temporaryFolder() + "/cnn.onnx"
        _ = try TestSupport.run(["optimize", TestSupport.fixture("cnn/model.onnx"), "-o", out])
        let reimported = try ONNXImporter.load(path: out)
        XCTAssertTrue(reimported.graph.nodes.contains { $0.qualifiedOpType == "ai.anvil.FusedConv" }, "fused ops must survive the round trip")
    }

    func testStandardOnlyKeepsEveryNodeInTheONNXDomain() throws {
        let out = try TestSupport.temporaryFolder() + "/std.onnx"
        let r = try TestSupport.run(["optimize", TestSupport.fixture("transformer/model.onnx"), "-o", out, "--standard-only"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let model = try ONNXImporter.load(path: out)
        XCTAssertTrue(model.graph.nodes.allSatisfy { $0.domain.isEmpty }, "\(model.graph.nodes.map(\.qualifiedOpType))")
        XCTAssertNil(model.opsetVersion(domain: "ai.anvil"))
    }

    func testOptimizeRefusesToOverwriteItsInputAndBadPassNames() throws {
        let folder = try TestSupport.temporaryFolder()
        let copy = folder + "/model.onnx"
        try FileManager.default.copyItem(atPath: TestSupport.fixture("cnn/model.onnx"), toPath: copy)
        let before = try Data(contentsOf: URL(fileURLWithPath: copy))
        let r = try TestSupport.run(["optimize", copy, "-o", folder + "/./model.onnx"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("is the same file as the model"), r.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: copy)), before)
        let bad = try TestSupport.run(["optimize", copy, "-o", folder + "/out.onnx", "--skip", "no-such-pass"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("unknown pass 'no-such-pass'"), bad.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder + "/out.onnx"))
    }
}

final class BuildCommandTests: XCTestCase {
    func testBuildThenRunAndValidateTheEngine() throws {
        let folder = try TestSupport.temporaryFolder()
        for name in ["cnn", "if_branch", "dynamic_batch"] {
            let engine = folder + "/\(name).anvil"
            let build = try TestSupport.run(["build", TestSupport.fixture("\(name)/model.onnx"), "-o", engine])
            XCTAssertEqual(build.status, 0, build.stderr)
            XCTAssertTrue(build.stdout.contains("layers"), build.stdout)
            let validate = try TestSupport.run(["validate", engine, "--reference", TestSupport.fixture(name)])
            XCTAssertEqual(validate.status, 0, "\(name): \(validate.stdout)\(validate.stderr)")
        }
    }

    func testBuildRefusesUnsupportedOpsAndCorruptEngines() throws {
        let folder = try TestSupport.temporaryFolder()
        let unsupported = try TestSupport.run(["build", TestSupport.fixture("invalid/unknown_op.onnx"), "-o", folder + "/x.anvil"])
        XCTAssertEqual(unsupported.status, 1)
        XCTAssertTrue(unsupported.stderr.contains("fancy1 (FancyOp)"), unsupported.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder + "/x.anvil"))
        // A truncated engine is refused by run with a clear message.
        let engine = folder + "/cnn.anvil"
        _ = try TestSupport.run(["build", TestSupport.fixture("cnn/model.onnx"), "-o", engine])
        let bytes = try Data(contentsOf: URL(fileURLWithPath: engine))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: folder + "/half.anvil"))
        let run = try TestSupport.run(["validate", folder + "/half.anvil", "--reference", TestSupport.fixture("cnn")])
        XCTAssertEqual(run.status, 1)
        XCTAssertTrue(run.stderr.contains("half.anvil") && run.stderr.contains("truncated"), run.stderr)
    }
}

final class BenchCommandTests: XCTestCase {
    func testBenchPrintsASummaryAndExportsTimes() throws {
        let folder = try TestSupport.temporaryFolder()
        let times = folder + "/times.json"
        let r = try TestSupport.run(["bench", TestSupport.fixture("cnn/model.onnx"), "--duration", "0.2", "--iterations", "5",
                                     "--warmUp", "10", "--exportTimes", times, "--dumpProfile"])
        XCTAssertEqual(r.status, 0, r.stderr)
        for part in ["Throughput:", "median =", "percentile(99%)", "Load + first inference", "=== Profile"] {
            XCTAssertTrue(r.stdout.contains(part), "missing '\(part)': \(r.stdout)")
        }
        let records = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: times))) as? [[String: Double]]
        XCTAssertGreaterThanOrEqual(records?.count ?? 0, 5)
        XCTAssertNotNil(records?.first?["computeMs"])
        XCTAssertNotNil(records?.first?["startComputeMs"])
        let bad = try TestSupport.run(["bench", TestSupport.fixture("cnn/model.onnx"), "--percentile", "abc"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("--percentile"), bad.stderr)
    }
}

extension BuildCommandTests {
    func testInspectShowsEngineLayersTacticsAndProvenance() throws {
        let engine = try TestSupport.temporaryFolder() + "/cnn.anvil"
        _ = try TestSupport.run(["build", TestSupport.fixture("cnn/model.onnx"), "-o", engine])
        let text = try TestSupport.run(["inspect", engine])
        XCTAssertEqual(text.status, 0, text.stderr)
        XCTAssertTrue(text.stdout.contains("ai.anvil.FusedConv [oneDNN convolution ("), text.stdout)
        XCTAssertTrue(text.stdout.contains("(3 fused, 0 on slow paths)"), text.stdout)
        XCTAssertTrue(text.stdout.contains("fused from: /block/block.3/Conv + /block/block.4/BatchNormalization + /Add + /relu/Relu"), text.stdout)
        XCTAssertTrue(text.stdout.contains("Memory plan (from the file): arena"), text.stdout)
        XCTAssertTrue(text.stdout.contains("Prepacked weights: 4 ("), text.stdout)
        XCTAssertTrue(text.stdout.contains("used in place by 4 of 4 weighted kernels"), text.stdout)
        let json = try TestSupport.run(["inspect", engine, "--format", "json"])
        let object = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        // TensorRT engine-inspector shape: Layers with Name, LayerType, Inputs/Outputs (Dimensions, Format/Datatype), TacticName.
        let layers = try XCTUnwrap(object?["Layers"] as? [[String: Any]])
        XCTAssertEqual(layers.count, 7)
        XCTAssertTrue((layers.first?["Kernel"] as? String)?.hasPrefix("oneDNN convolution") ?? false)
        XCTAssertEqual(layers.first?["Precision"] as? String, "FP32")
        XCTAssertNil(layers.first?["SlowPath"] as? String)
        XCTAssertEqual(layers.first?["LayerType"] as? String, "ai.anvil.FusedConv")
        XCTAssertNotNil(layers.first?["TacticName"] as? String)
        let output = try XCTUnwrap((layers.first?["Outputs"] as? [[String: Any]])?.first)
        XCTAssertEqual(output["Dimensions"] as? [String], ["1", "16", "32", "32"])
        XCTAssertNotNil(output["Format/Datatype"] as? String)
        XCTAssertEqual(object?["Bindings"] as? [String], ["image", "logits"])
        let plan = try XCTUnwrap(object?["MemoryPlan"] as? [String: Any])
        XCTAssertEqual(plan["Planned"] as? Bool, true)
        XCTAssertGreaterThan(plan["ArenaBytes"] as? Int ?? 0, 0)
        XCTAssertLessThanOrEqual(plan["ArenaBytes"] as? Int ?? 0, plan["BytesWithoutReuse"] as? Int ?? 0)
        XCTAssertEqual(plan["FromFile"] as? Bool, true)
        let weights = try XCTUnwrap(object?["PrepackedWeights"] as? [String: Any])
        XCTAssertEqual(weights["Entries"] as? Int, 4)
        XCTAssertEqual(weights["KernelsUsingThemInPlace"] as? Int, 4)
    }

    /// --minShapes/--optShapes/--maxShapes profiles: inputs inside run, outside are refused; --shapes must fit the model.
    func testShapeProfilesAreRecordedAndEnforced() throws {
        let folder = try TestSupport.temporaryFolder()
        let engine = folder + "/dyn.anvil"
        let model = TestSupport.fixture("dynamic_batch/model.onnx")
        let build = try TestSupport.run(["build", model, "-o", engine, "--minShapes", "image:1x1x28x28", "--optShapes", "image:4x1x28x28",
                                         "--maxShapes", "image:8x1x28x28", "--exportLayerInfo", folder + "/layers.json"])
        XCTAssertEqual(build.status, 0, build.stderr)
        let layers = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: folder + "/layers.json"))) as? [String: Any]
        XCTAssertNotNil(layers?["Layers"])
        let inspect = try TestSupport.run(["inspect", engine])
        XCTAssertTrue(inspect.stdout.contains("profile image: min [1, 1, 28, 28], opt [4, 1, 28, 28], max [8, 1, 28, 28]"), inspect.stdout)
        for (batch, status) in [(2, Int32(0)), (8, 0), (9, 1)] {
            let r = try TestSupport.run(["bench", engine, "--shapes", "image:\(batch)x1x28x28", "--duration", "0", "--iterations", "3", "--warmUp", "0"])
            XCTAssertEqual(r.status, status, "batch \(batch): \(r.stdout)\(r.stderr)")
            if status != 0 { XCTAssertTrue(r.stderr.contains("outside the engine's profile"), r.stderr) }
            if status == 0 { XCTAssertFalse(r.stdout.contains("layer interpreter"), r.stdout) }
        }
        for bad in [["--shapes", "image:2x3x28x28"], ["--shapes", "nosuch:1x1"], ["--minShapes", "image:4x1x28x28", "--optShapes", "image:2x1x28x28", "--maxShapes", "image:8x1x28x28"],
                    ["--shapes", "image:1xAx28x28"], ["--minShapes", "image:1x1x28x28"]] {
            let r = try TestSupport.run(["build", model, "-o", folder + "/bad.anvil"] + bad)
            XCTAssertEqual(r.status, 1, "\(bad)")
            XCTAssertTrue(r.stderr.hasPrefix("error:"), r.stderr)
            XCTAssertFalse(FileManager.default.fileExists(atPath: folder + "/bad.anvil"))
        }
        // A fixed shape builds a static engine that plans at load.
        let fixed = try TestSupport.run(["build", model, "-o", folder + "/fixed.anvil", "--shapes", "image:3x1x28x28"])
        XCTAssertEqual(fixed.status, 0, fixed.stderr)
        let wrong = try TestSupport.run(["bench", folder + "/fixed.anvil", "--shapes", "image:2x1x28x28", "--duration", "0", "--iterations", "1"])
        XCTAssertEqual(wrong.status, 1)
    }

    /// trtexec command lines work where they make sense on a CPU; GPU-only flags are refused by name.
    func testExecAcceptsTrtexecSpellings() throws {
        let folder = try TestSupport.temporaryFolder()
        let engine = folder + "/cnn.anvil", profile = folder + "/profile.json", times = folder + "/times.json"
        let build = try TestSupport.run(["exec", "--onnx=" + TestSupport.fixture("cnn/model.onnx"), "--saveEngine=" + engine,
                                         "--shapes=image:1x3x32x32", "--skipInference"])
        XCTAssertEqual(build.status, 0, build.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: engine))
        let run = try TestSupport.run(["exec", "--loadEngine=" + engine, "--iterations=5", "--warmUp=10", "--duration=0", "--avgRuns=2",
                                       "--percentile=50,99", "--dumpProfile", "--separateProfileRun", "--exportProfile=" + profile, "--exportTimes=" + times])
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(run.stdout.contains("percentile(99%)"), run.stdout)
        XCTAssertTrue(run.stdout.contains("Average on 2 runs"), run.stdout)
        // trtexec's profile JSON: a count record, then per-layer name/timeMs/averageMs/medianMs/percentage.
        let records = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: profile))) as? [[String: Any]])
        XCTAssertEqual(records.first?["count"] as? Int, 5)
        for key in ["name", "timeMs", "averageMs", "medianMs", "percentage"] { XCTAssertNotNil(records.dropFirst().first?[key], key) }
        let shares = records.dropFirst().compactMap { $0["percentage"] as? Double }.reduce(0, +)
        XCTAssertEqual(shares, 100, accuracy: 0.01)
        for (flags, message) in [(["--loadEngine=" + engine, "--useCudaGraph"], "--useCudaGraph is a GPU-only"),
                                 (["--loadEngine=" + engine, "--device=0"], "--device is a GPU-only"),
                                 (["--onnx=" + TestSupport.fixture("cnn/model.onnx"), "--fp8"], "--fp8"),
                                 (["--loadEngine=" + engine, "--bogus"], "unknown flag --bogus"),
                                 (["--loadEngine=" + engine, "--iterations=many"], "--iterations=many is not a number"),
                                 (["--iterations=3"], "--onnx"),
                                 (["--loadEngine=" + engine, "--onnx=x.onnx"], "not both")] {
            let r = try TestSupport.run(["exec"] + flags)
            XCTAssertEqual(r.status, 1, "\(flags)")
            XCTAssertTrue(r.stderr.contains(message), "\(flags): \(r.stderr)")
        }
    }
}

extension BuildCommandTests {
    /// --tacticSources=-WINOGRAD keeps every convolution off the Winograd kernels (build and exec);
    /// trtexec's GPU sources and malformed lists are refused by name.
    func testTacticSourcesTurnWinogradOff() throws {
        let folder = try TestSupport.temporaryFolder()
        // 32 channels, 3x3, stride 1: a layer where Winograd is a candidate.
        var rng = SeededGenerator(seed: 5)
        let w = try Tensor(floats: (0..<(32 * 32 * 9)).map { _ in Float.random(in: -0.1...0.1, using: &rng) }, shape: [32, 32, 3, 3])
        let g = Graph(name: "wino", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [1, 32, 28, 28]))],
                      outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                      nodes: [Node(name: "conv", opType: "Conv", inputs: ["x", "w"], outputs: ["y"], attributes: ["pads": .ints([1, 1, 1, 1])])],
                      initializers: [("w", w)])
        let model = folder + "/wino.onnx"
        try ONNXExporter.write(Model(graph: g, opsets: [OpsetImport(domain: "", version: 17)]), to: model)
        let off = try TestSupport.run(["build", model, "-o", folder + "/off.anvil", "--tacticSources=-WINOGRAD", "--timingCacheFile", folder + "/off.cache"])
        XCTAssertEqual(off.status, 0, off.stderr)
        XCTAssertFalse(try String(contentsOfFile: folder + "/off.cache", encoding: .utf8).contains("winograd"))
        let on = try TestSupport.run(["build", model, "-o", folder + "/on.anvil", "--timingCacheFile", folder + "/on.cache"])
        XCTAssertEqual(on.status, 0, on.stderr)
        if CPUFeatures.host.contains(.avx512Core) {
            XCTAssertTrue(try String(contentsOfFile: folder + "/on.cache", encoding: .utf8).contains("winograd"), "Winograd is timed by default")
        }
        let exec = try TestSupport.run(["exec", "--onnx=" + model, "--tacticSources=-winograd,+WINOGRAD,-WINOGRAD", "--skipInference", "--saveEngine=" + folder + "/e.anvil"])
        XCTAssertEqual(exec.status, 0, exec.stderr)
        XCTAssertFalse(try TestSupport.run(["inspect", folder + "/e.anvil"]).stdout.contains("onednn:winograd"))
        for (flag, message) in [("--tacticSources=-CUDNN", "CUDNN is a GPU tactic source"), ("--tacticSources=WINOGRAD", "must start with + or -"),
                                ("--tacticSources=-FFT", "unknown source 'FFT'")] {
            let r = try TestSupport.run(["build", model, "-o", folder + "/x.anvil", flag])
            XCTAssertEqual(r.status, 1, flag)
            XCTAssertTrue(r.stderr.contains(message), "\(flag): \(r.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: folder + "/x.anvil"))
        }
    }

    /// Tactic timing: layouts chosen at build time, recorded per layer; with a timing
    /// cache a rebuild measures nothing and writes a byte-identical engine.
    func testTimingCacheMakesRebuildsIdentical() throws {
        let folder = try TestSupport.temporaryFolder()
        let cache = folder + "/timing.cache", model = TestSupport.fixture("cnn/model.onnx")
        let first = try TestSupport.run(["build", model, "-o", folder + "/a.anvil", "--timingCacheFile", cache, "--verbose"])
        XCTAssertEqual(first.status, 0, first.stderr)
        XCTAssertTrue(first.stdout.contains(" measured") && !first.stdout.contains("tactics: 0 measured"), first.stdout)
        let second = try TestSupport.run(["build", model, "-o", folder + "/b.anvil", "--timingCacheFile", cache, "--verbose"])
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertTrue(second.stdout.contains("tactics: 0 measured"), second.stdout)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: folder + "/a.anvil")), try Data(contentsOf: URL(fileURLWithPath: folder + "/b.anvil")))
        let inspect = try TestSupport.run(["inspect", folder + "/a.anvil"])
        XCTAssertTrue(["kernel's choice layout", "nhwc layout", "plain layout", "nchw16c layout", "winograd"].contains {
            inspect.stdout.contains("[oneDNN convolution (\($0)")
        }, inspect.stdout)
        try Data("not a cache line\n".utf8).write(to: URL(fileURLWithPath: folder + "/bad.cache"))
        let bad = try TestSupport.run(["build", model, "-o", folder + "/c.anvil", "--timingCacheFile", folder + "/bad.cache"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("bad.cache") && bad.stderr.contains("line 1"), bad.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder + "/c.anvil"))
    }
}
