"""The Airflow UI in a real browser: Debian's headless Chromium driven by Selenium through Debian's
chromium-driver (nothing downloaded at run time), on the shared `airflow_instance`: log in with the printed
login, see every DAG of the dags folder, open stream_deploy, trigger it with a version from the trigger form and
see the run in the grid. A screenshot of each step is saved in the test's tmp folder."""

from __future__ import annotations

import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import ElementClickInterceptedException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as visible
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import unique_name
from tests.e2e.conftest import DAG_FILES

DEPLOY_DAG = "stream_deploy"
# A busy 2-core machine renders a page in seconds, not milliseconds.
PAGE_TIMEOUT = 90


@pytest.fixture
def browser():
    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(argument)
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    yield driver
    driver.quit()


def test_login_see_dags_trigger_deploy_from_the_form_and_see_it_in_the_grid(airflow_instance, browser, tmp_path):
    airflow = airflow_instance
    # The React UI re-renders as its queries answer: an element found a moment ago may be gone by the click.
    wait = WebDriverWait(browser, PAGE_TIMEOUT, ignored_exceptions=(StaleElementReferenceException,
                                                                    ElementClickInterceptedException))

    def act(locator: tuple[str, str], action) -> None:
        """Apply `action` to the element, again on a fresh lookup while the page is still changing under it."""
        wait.until(lambda driver: action(driver.find_element(*locator)) or True)
    version = unique_name("browser")
    # Paused, the run the form creates stays queued: it shows in the grid but deploys nothing (a deploy would
    # package a release and restart the job). The form then offers to unpause; the test says no.
    airflow.set_paused(DEPLOY_DAG, True)
    try:
        browser.get(f"{airflow.url}/dags")
        act((By.NAME, "username"), lambda field: field.send_keys("admin"))
        act((By.NAME, "password"), lambda field: field.send_keys(airflow.password))
        act((By.CSS_SELECTOR, "button[type=submit]"), lambda button: button.click())

        def listed_dags(driver) -> set[str]:
            hrefs = [link.get_attribute("href") for link in driver.find_elements(By.CSS_SELECTOR, "a[href*='/dags/']")]
            return {href.split("/dags/", 1)[1] for href in hrefs if "/" not in href.split("/dags/", 1)[1]}

        wait.until(lambda driver: len(listed_dags(driver)) == len(DAG_FILES))
        assert listed_dags(browser) == set(airflow.dags())
        browser.save_screenshot(str(tmp_path / "1-dags.png"))

        act((By.CSS_SELECTOR, f"a[href$='/dags/{DEPLOY_DAG}']"), lambda link: link.click())
        act((By.CSS_SELECTOR, "[data-testid=trigger-dag-button]"), lambda button: button.click())
        act((By.NAME, "element_version"), lambda field: field.send_keys(version))
        unpause = (By.XPATH, f"//label[contains(., 'Unpause {DEPLOY_DAG} on trigger')]")
        act(unpause, lambda box: box.click())
        wait.until(lambda driver: driver.find_element(*unpause).get_attribute("data-state") == "unchecked")
        browser.save_screenshot(str(tmp_path / "2-trigger-form.png"))
        act((By.CSS_SELECTOR, "[data-testid=trigger-dag-submit]"), lambda button: button.click())

        runs = airflow.wait_for("the run the form created",
                                lambda: [r for r in airflow.runs(DEPLOY_DAG) if r["conf"] == {"version": version}],
                                timeout=60)
        assert [(r["run_type"], r["state"]) for r in runs] == [("manual", "queued")], runs
        run_id = runs[0]["dag_run_id"]
        # The grid's cell of the run's first task.
        wait.until(visible.visibility_of_element_located(
            (By.CSS_SELECTOR, f'[data-testid="grid-{run_id}-gate_before"]')))
        browser.save_screenshot(str(tmp_path / "3-grid.png"))
        assert airflow.dags()[DEPLOY_DAG]["is_paused"], "the form must not have unpaused the DAG"
    finally:
        for run in airflow.runs(DEPLOY_DAG):
            if run["conf"] == {"version": version}:
                airflow.request("DELETE", f"/api/v2/dags/{DEPLOY_DAG}/dagRuns/{run['dag_run_id']}")
        airflow.set_paused(DEPLOY_DAG, False)
