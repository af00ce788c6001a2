"""The web page in headless Chromium: type a text, see the entities and the attention heatmap, the candidates for
each [MASK] of a pre-trained model, or the knowledge graph extracted from a sentence; screenshots saved."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from bench._serving import Server

from tests.serving import make_ner_checkpoint, make_triples_checkpoint

ARTIFACTS = Path(__file__).resolve().parents[1] / "runs" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                    reason="Debian's chromium and chromium-driver are not installed (make test installs them)")
def test_page_predicts_and_draws_attention(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = Server(make_ner_checkpoint(tmp_path))
    driver = _driver(tmp_path)
    try:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "task ner" in d.find_element(By.ID, "model-info").text)
        assert _entities_for(driver, wait, "张三去北京了") == ["张三PER", "北京LOC"]
        driver.find_element(By.ID, "show-attention").click()
        wait.until(lambda d: d.find_element(By.ID, "heatmap").get_attribute("data-drawn"))
        assert driver.find_element(By.ID, "heatmap").get_attribute("data-drawn") == "0:0:8"
        # the canvas really has colour in it (not a blank white square)
        painted = driver.execute_script(
            "const c = document.getElementById('heatmap'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
            "for (let i = 0; i < d.length; i += 4) if (d[i + 2] > d[i] + 40) n++; return n;")
        assert painted > 1000
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS / "web-page.png"))
    finally:
        driver.quit()
        server.stop()


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                    reason="Debian's chromium and chromium-driver are not installed (make test installs them)")
def test_page_fills_masks_of_a_pre_trained_model(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from bertkit import BertConfig, BertForPreTraining, Tokenizer
    from bertkit.predict import Predictor
    from tests.conftest import randomize_

    tok = Tokenizer.train(["北京举行新年音乐会", "今天天气很好", "人民日报发表社论"], vocab_size=60, min_frequency=1)
    model = randomize_(BertForPreTraining(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                     intermediate_size=37, vocab_size=len(tok))))
    model.save_pretrained(tmp_path / "mlm")
    tok.save_pretrained(tmp_path / "mlm")
    server = Server(tmp_path / "mlm", "--precision", "fp32")
    driver = _driver(tmp_path)
    try:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "task fill_mask" in d.find_element(By.ID, "model-info").text)
        box = driver.find_element(By.ID, "field-text")
        box.send_keys("今天[MASK]气很好，北京[MASK]行")
        driver.find_element(By.ID, "submit").click()
        wait.until(lambda d: d.find_element(By.ID, "result").get_attribute("data-done") == "1")
        masks = driver.find_elements(By.CSS_SELECTOR, "#candidates .mask")
        assert len(masks) == 2  # one block of candidates per [MASK]
        shown = [[row.find_elements(By.TAG_NAME, "td")[0].text for row in m.find_elements(By.TAG_NAME, "tr")]
                 for m in masks]
        expected = Predictor(tmp_path / "mlm").predict(["今天[MASK]气很好，北京[MASK]行"])[0]["masks"]
        assert shown == [[c["token_str"] for c in candidates] for candidates in expected]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS / "web-fill-mask.png"))
    finally:
        driver.quit()
        server.stop()


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                    reason="Debian's chromium and chromium-driver are not installed (make test installs them)")
def test_page_draws_the_extracted_knowledge_graph(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from bertkit.predict import Predictor

    checkpoint = make_triples_checkpoint(tmp_path)
    text = "李四的父亲是李老，他爱听光良的《童话》"
    [expected] = Predictor(checkpoint, precision="fp32").predict([text])
    assert len(expected["triples"]) == 2
    server = Server(checkpoint, "--precision", "fp32")
    driver = _driver(tmp_path)
    try:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "task triples" in d.find_element(By.ID, "model-info").text)
        assert _entities_for(driver, wait, text) == [f"{e['text']}{e['type']}" for e in expected["entities"]]
        svg = driver.find_element(By.ID, "graph")
        nodes = {n for t in expected["triples"] for n in (t["subject"], t["object"])}
        assert svg.get_attribute("data-nodes") == str(len(nodes)) and svg.get_attribute("data-edges") == "2"
        labels = sorted(e.text for e in svg.find_elements(By.CSS_SELECTOR, "text.edge-label"))
        assert labels == sorted(t["predicate"] for t in expected["triples"])
        shown = {e.text for e in svg.find_elements(By.CSS_SELECTOR, "g.node text")}
        assert nodes <= shown  # every entity drawn as a node (with its type under it)
        assert len(svg.find_elements(By.CSS_SELECTOR, "path.edge")) == 2
        assert svg.size["width"] > 300 and svg.size["height"] > 150  # drawn, not collapsed
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS / "web-triples.png"))
    finally:
        driver.quit()
        server.stop()


def _entities_for(driver, wait, text: str) -> list[str]:
    """Type `text`, press Predict, and read the entities the page marks (text + label)."""
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "field-text")  # the page builds its fields from the task's input schema
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_element(By.ID, "result").get_attribute("data-done") == "1")
    return [m.text.replace("\n", "") for m in driver.find_elements(By.CSS_SELECTOR, "#entities mark")]


def _driver(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,1400"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                    reason="Debian's chromium and chromium-driver are not installed (make test installs them)")
def test_page_asks_for_the_api_key_and_then_predicts(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    server = Server(make_ner_checkpoint(tmp_path), "--api-key", "page-key-0123456789")
    driver = _driver(tmp_path)
    try:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "needs an API key" in d.find_element(By.ID, "model-info").text)
        assert driver.find_element(By.ID, "key-row").is_displayed()
        driver.find_element(By.ID, "api-key").send_keys("page-key-0123456789", Keys.TAB)  # the change event stores it
        wait.until(lambda d: "task ner" in d.find_element(By.ID, "model-info").text)
        assert _entities_for(driver, wait, "张三去北京了") == ["张三PER", "北京LOC"]
    finally:
        driver.quit()
        server.stop()


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                    reason="Debian's chromium and chromium-driver are not installed (make test installs them)")
def test_page_shows_a_label_set_and_a_score(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from bertkit.predict import Predictor
    from tests.serving import make_windowed_classifier

    text = "the cat sat on the mat while dogs run fast"
    for name, problem, element in [("multi", "multi_label_classification", "labels"), ("score", "regression", "score")]:
        make_windowed_classifier(tmp_path / name, problem, labels=("joy", "anger", "fear"))
        [expected] = Predictor(tmp_path / name, precision="fp32").predict([text])
        server = Server(tmp_path / name, "--precision", "fp32")
        driver = _driver(tmp_path)
        try:
            driver.get(server.url + "/")
            wait = WebDriverWait(driver, 30)
            wait.until(lambda d: "task classification" in d.find_element(By.ID, "model-info").text)
            _entities_for(driver, wait, text)
            shown = driver.find_element(By.ID, element).text
            if element == "labels":
                assert shown == (", ".join(expected["labels"]) or "(none)")
                assert len(driver.find_elements(By.CSS_SELECTOR, ".probs tr")) == 3
                assert not driver.find_elements(By.ID, "label")  # no single label drawn for a label set
            else:
                assert float(shown) == pytest.approx(expected["score"], abs=1e-4)
                assert not driver.find_elements(By.CSS_SELECTOR, ".probs")
        finally:
            driver.quit()
            server.stop()


def test_page_searches_an_index_and_shows_hits_with_scores(tmp_path, minilm_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from bertkit.search import build_index
    from tests.test_search import SENTENCES

    pytest.importorskip("faiss")
    (tmp_path / "corpus.txt").write_text("".join(f"{s}\n" for s in SENTENCES), encoding="utf-8")
    build_index(minilm_dir, tmp_path / "corpus.txt", tmp_path / "idx", progress=False)
    server = Server(tmp_path / "idx")
    driver = _driver(tmp_path)
    try:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.find_element(By.ID, "search").is_displayed())
        assert "idx: 12 texts, flat index" in driver.find_element(By.ID, "search-info").text
        driver.find_element(By.ID, "query").send_keys("a kitten naps on the couch")
        top_k = driver.find_element(By.ID, "top-k")
        top_k.clear()
        top_k.send_keys("3")
        driver.find_element(By.ID, "search-button").click()
        wait.until(lambda d: d.find_element(By.ID, "hits").get_attribute("data-done") == "1")
        shown = [(int(li.get_attribute("data-id")), li.find_element(By.CLASS_NAME, "hit-text").text,
                  li.find_element(By.CLASS_NAME, "score").text) for li in driver.find_elements(By.CSS_SELECTOR,
                                                                                                "#hits li.hit")]
        _, answer, _ = server.post("/search", {"queries": ["a kitten naps on the couch"], "top_k": 3})
        assert shown == [(h["id"], h["text"], f"{h['score']:.3f}") for h in answer["results"][0]]
        assert shown[0][1] == "The cat is sleeping on the warm sofa."
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS / "web-search.png"))
    finally:
        driver.quit()
        server.stop()
