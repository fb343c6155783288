"""The input-pipeline benchmark command runs end to end on a few images."""

from resnet_jax.data.benchmark import main


def test_benchmark_reports_throughput_and_resume_cost(tmp_path):
    results = main(["--num_images", "20", "--num_eval_images", "8", "--batch_size", "4",
                    "--image_size", "64", "--source", "folder", "--data_root", str(tmp_path),
                    "--json", str(tmp_path / "results.json")])
    assert results["train_images_per_s"] > 0 and results["eval_images_per_s"] > 0
    assert sorted(results["resume_s_by_step"]) == [0, 1, 2, 3, 4]
    assert 50_000 < results["mean_jpeg_bytes"] < 200_000
    assert (tmp_path / "results.json").exists()
