import AnvilEngine
import Foundation
import XCTest

/// Every report reads the same facts: `build --exportLayerInfo`, `inspect` (JSON and
/// text), `bench --exportProfile` and `bench --dumpProfile` name the same kernels for
/// each layer, and build and inspect the same decisions, CPU features and memory-plan
/// facts. Run on the fixtures and, when `tools/make-bench-models` has made them, on the
/// benchmark models, where no layer may be on a slow path either.
final class ReportAgreementTests: XCTestCase {
    func testReportsAgreeLayerByLayer() throws {
        var cases: [(model: String, flags: [String], mustBeFast: Bool)] = [
            (TestSupport.fixture("cnn/model.onnx"), [], true),
            (TestSupport.fixture("transformer/model.onnx"), [], true),
            (TestSupport.fixture("transformer_dynamic/model.onnx"), [], true),
            (TestSupport.fixture("dynamic_batch/model.onnx"), [], false),
            (TestSupport.fixture("dynamic_batch/model.onnx"), ["--shapes", "image:3x1x28x28"], false),
            (TestSupport.fixture("if_branch/model.onnx"), [], false),
        ]
        // BF16 layers: the same precision in every report.
        if CPUFeatures.host.contains(.avx512Bf16) {
            cases += [(TestSupport.fixture("cnn/model.onnx"), ["--bf16"], true), (TestSupport.fixture("transformer/model.onnx"), ["--bf16"], true)]
        }
        for name in ["resnet50", "mobilenetv2", "yolov8n", "minilm"] {
            let path = "\(TestSupport.root)/models/\(name)/model.onnx"
            if FileManager.default.fileExists(atPath: path) { cases.append((path, [], true)) }
        }
        for (model, flags, mustBeFast) in cases {
            try checkAgreement(model, flags: flags, mustBeFast: mustBeFast)
        }
    }

    func json(_ path: String) throws -> Any {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path)))
    }

    func checkAgreement(_ model: String, flags: [String], mustBeFast: Bool) throws {
        let folder = try TestSupport.temporaryFolder()
        let what = "\(model) \(flags)"
        let built = try TestSupport.run(["build", model, "-o", folder + "/e.anvil", "--exportLayerInfo", folder + "/build.json"] + flags)
        XCTAssertEqual(built.status, 0, "\(what): \(built.stderr)")
        let inspected = try TestSupport.run(["inspect", folder + "/e.anvil", "--format", "json"])
        XCTAssertEqual(inspected.status, 0, "\(what): \(inspected.stderr)")
        try Data(inspected.stdout.utf8).write(to: URL(fileURLWithPath: folder + "/inspect.json"))
        let text = try TestSupport.run(["inspect", folder + "/e.anvil"])
        let bench = try TestSupport.run(["bench", folder + "/e.anvil", "--duration", "0", "--iterations", "2", "--warmUp", "0",
                                         "--dumpProfile", "--exportProfile", folder + "/profile.json"])
        XCTAssertEqual(bench.status, 0, "\(what): \(bench.stderr)")

        let b = try XCTUnwrap(try json(folder + "/build.json") as? [String: Any], what)
        let i = try XCTUnwrap(try json(folder + "/inspect.json") as? [String: Any], what)
        for key in ["RequiredCPUFeatures", "Bindings"] {
            XCTAssertEqual("\(b[key] ?? "-")", "\(i[key] ?? "-")", "\(what): \(key)")
        }
        let bm = try XCTUnwrap(b["MemoryPlan"] as? [String: Any]), im = try XCTUnwrap(i["MemoryPlan"] as? [String: Any])
        for key in ["Planned", "FromFile", "ArenaBytes", "ScratchpadBytes", "BytesWithoutReuse"] {
            XCTAssertEqual("\(bm[key] ?? "-")", "\(im[key] ?? "-")", "\(what): MemoryPlan.\(key)")
        }
        XCTAssertTrue(text.stdout.contains("requires CPU features: \(i["RequiredCPUFeatures"]!)"), "\(what): \(text.stdout)")

        let bl = try XCTUnwrap(b["Layers"] as? [[String: Any]]), il = try XCTUnwrap(i["Layers"] as? [[String: Any]])
        XCTAssertEqual(bl.count, il.count, what)
        let profile = try XCTUnwrap(try json(folder + "/profile.json") as? [[String: Any]])
        var profiled: [String: String] = [:], profiledPrecision: [String: String] = [:]
        for row in profile {
            if let name = row["name"] as? String, let tactic = row["tactic"] as? String { profiled[name] = tactic }
            if let name = row["name"] as? String, let precision = row["precision"] as? String { profiledPrecision[name] = precision }
        }
        for (x, y) in zip(bl, il) {
            let name = try XCTUnwrap(x["Name"] as? String)
            XCTAssertEqual(name, y["Name"] as? String, what)
            for key in ["Kernel", "TacticName", "Precision", "SlowPath", "LayerType"] {
                XCTAssertEqual("\(x[key] ?? "-")", "\(y[key] ?? "-")", "\(what): layer \(name) \(key)")
            }
            let tactic = try XCTUnwrap(y["TacticName"] as? String)
            // Layers with steps appear in the profile under the same kernels (views run nothing).
            if tactic != "view (no copy)" {
                XCTAssertEqual(profiled[name], tactic, "\(what): layer \(name) in the profile")
                XCTAssertEqual(profiledPrecision[name], y["Precision"] as? String, "\(what): layer \(name)'s precision in the profile")
                XCTAssertTrue(bench.stdout.contains("\(name) [\(tactic)] \(y["Precision"]!)"), "\(what): layer \(name) in --dumpProfile")
            }
            let kernel = try XCTUnwrap(y["Kernel"] as? String)
            XCTAssertTrue(text.stdout.contains("\(name): \(y["LayerType"]!) [\(kernel): \(tactic)]"), "\(what): layer \(name) in inspect's text")
            if mustBeFast {
                XCTAssertNil(y["SlowPath"] as? String, "\(what): layer \(name) is on a slow path")
                XCTAssertFalse(tactic.hasPrefix("ref") || tactic.contains(" ref") || tactic.contains("reference"), "\(what): layer \(name) runs \(tactic)")
            }
        }
    }
}
